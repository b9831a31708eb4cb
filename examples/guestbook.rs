//! A small web application: `guestbook`, a page listing what visitors wrote and a form
//! to write more, with cookies, a CSRF-protected form and an auto-escaping template.
//!
//! ```sh
//! AUTH_ADMIN_ID=admin AUTH_ADMIN_SECRET=secret cargo run --example guestbook
//! curl -u admin:secret -d name=gb -d type=guestbook http://127.0.0.1:5000/services/register
//! curl -u admin:secret -X POST http://127.0.0.1:5000/services/<uuid>/start
//! # then open http://127.0.0.1:5000/<uuid>/ in a browser; a form posted without the
//! # page's token is refused:
//! curl -d name=x -d message=y http://127.0.0.1:5000/<uuid>/    # 403
//! ```

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use serde::Serialize;

use herve::contract::http::minijinja::Environment;
use herve::contract::http::{plain, ApiError, Cookie, CookieJar, CsrfGuard, FormOrJson, SameSite};
use herve::contract::{
    Fields, MountPrefix, RunningService, ServiceContext, ServiceError, ServiceType,
};
use herve::{async_trait, host};

/// The cookie holding the CSRF nonce.
const CSRF_COOKIE: &str = "guestbook_csrf";
/// The cookie remembering the visitor's name, to fill the form in next time.
const NAME_COOKIE: &str = "guestbook_name";
const MAX_NAME: usize = 40;
const MAX_MESSAGE: usize = 500;
/// Entries kept, the oldest dropped first: memory is not unlimited.
const MAX_ENTRIES: usize = 100;

/// Named `.html` so that every value written into it is HTML-escaped.
const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Guestbook</title></head>
<body>
<h1>Guestbook</h1>
{% if entries %}<ul>
{% for entry in entries %}  <li><b>{{ entry.name }}</b>: {{ entry.message }}</li>
{% endfor %}</ul>
{% else %}<p>Nobody has signed yet.</p>
{% endif %}
<form method="post" action="{{ action }}">
  <input type="hidden" name="csrf" value="{{ csrf }}">
  <p><label>Name <input name="name" value="{{ name }}" maxlength="40" required></label></p>
  <p><label>Message <textarea name="message" maxlength="500" required></textarea></label></p>
  <p><button>Sign</button></p>
</form>
</body>
</html>
"#;

/// `guestbook`: `GET /` shows the entries and the form, `POST /` signs.
pub struct Guestbook;

#[async_trait]
impl ServiceType for Guestbook {
    type Config = ();

    fn name(&self) -> &str {
        "guestbook"
    }

    fn description(&self) -> &str {
        "A guestbook page that visitors sign through a form"
    }

    async fn register(&self, _ctx: &ServiceContext, _fields: &Fields) -> Result<(), ServiceError> {
        Ok(())
    }

    async fn start(
        &self,
        _ctx: &ServiceContext,
        _config: &(),
    ) -> Result<Box<dyn RunningService>, ServiceError> {
        let csrf = CsrfGuard::new(CSRF_COOKIE)
            .map_err(|e| ServiceError::failed_because("No randomness for CSRF tokens", e))?;
        // `.html` templates escape every value they print.
        let mut templates = Environment::new();
        templates
            .add_template("page.html", PAGE)
            .map_err(|e| ServiceError::failed_because("The page template is invalid", e))?;
        let book = Arc::new(Book {
            csrf,
            templates,
            entries: Mutex::new(VecDeque::new()),
        });
        let routes = Router::new()
            .route("/", get(show).post(sign))
            .with_state(book);
        Ok(Box::new(routes))
    }
}

/// What one running guestbook holds.
struct Book {
    csrf: CsrfGuard,
    templates: Environment<'static>,
    entries: Mutex<VecDeque<Entry>>,
}

impl Book {
    fn entries(&self) -> MutexGuard<'_, VecDeque<Entry>> {
        // No handler leaves the list half-changed, so a panic elsewhere spoils nothing.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Clone, Serialize)]
struct Entry {
    name: String,
    message: String,
}

/// What the template is given.
#[derive(Serialize)]
struct Page {
    entries: Vec<Entry>,
    csrf: String,
    name: String,
    action: String,
}

/// The path the service is mounted at (`/<uuid>`), to write its own URLs with.
fn mounted_at(prefix: &Option<Extension<MountPrefix>>) -> &str {
    prefix
        .as_ref()
        .map_or("", |Extension(prefix)| prefix.as_str())
}

async fn show(
    State(book): State<Arc<Book>>,
    prefix: Option<Extension<MountPrefix>>,
    jar: CookieJar,
) -> Response {
    let name = jar
        .get(NAME_COOKIE)
        .map(|cookie| cookie.value().to_owned())
        .unwrap_or_default();
    // The nonce cookie goes back only to this service's pages.
    let (jar, csrf) = book.csrf.token_scoped(jar, mounted_at(&prefix));
    let page = Page {
        entries: book.entries().iter().cloned().collect(),
        csrf,
        name,
        action: format!("{}/", mounted_at(&prefix)),
    };
    let rendered = book
        .templates
        .get_template("page.html")
        .and_then(|template| template.render(&page));
    match rendered {
        // The page carries a token tied to this visitor: no cache may keep it.
        Ok(html) => (jar, [(header::CACHE_CONTROL, "no-store")], Html(html)).into_response(),
        Err(error) => ApiError::internal("The page could not be shown.", error).into_response(),
    }
}

async fn sign(
    State(book): State<Arc<Book>>,
    prefix: Option<Extension<MountPrefix>>,
    jar: CookieJar,
    FormOrJson(fields): FormOrJson,
) -> Response {
    // First: a form another site made a browser send must change nothing.
    if !book.csrf.verify(&jar, fields.get("csrf")) {
        return plain(
            StatusCode::FORBIDDEN,
            "The form has expired or did not come from this page; load the page again.\n",
        );
    }
    let name = fields.get("name").map(str::trim).unwrap_or_default();
    let message = fields.get("message").map(str::trim).unwrap_or_default();
    let fits = |text: &str, max: usize| !text.is_empty() && text.chars().count() <= max;
    if !fits(name, MAX_NAME) || !fits(message, MAX_MESSAGE) {
        return plain(
            StatusCode::UNPROCESSABLE_ENTITY,
            "A name (at most 40 characters) and a message (at most 500) are required.\n",
        );
    }
    {
        let mut entries = book.entries();
        if entries.len() >= MAX_ENTRIES {
            entries.pop_front();
        }
        entries.push_back(Entry {
            name: name.to_owned(),
            message: message.to_owned(),
        });
    }

    let prefix = mounted_at(&prefix);
    // Scoped to this service: other services of the same Herve never see it.
    let cookie_path = if prefix.is_empty() { "/" } else { prefix };
    let remembered = Cookie::build((NAME_COOKIE, name.to_owned()))
        .path(cookie_path.to_owned())
        .http_only(true)
        .same_site(SameSite::Lax)
        .build();
    // After a POST, a redirect: reloading the page then does not sign again.
    let location = HeaderValue::try_from(format!("{prefix}/"))
        .unwrap_or_else(|_| HeaderValue::from_static("/"));
    (
        StatusCode::SEE_OTHER,
        jar.add(remembered),
        [(header::LOCATION, location)],
    )
        .into_response()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt().init();
    host::serve_with(|herve| herve.service_type(Guestbook)).await
}
