//! The dashboard at `/ui/`: a sign-in form, then one page whose script drives the
//! admin API with the session cookie and its CSRF token. Everything is embedded in the
//! binary; the pages load nothing from elsewhere, run no inline script, and the script
//! writes text, never HTML, so what services are called is shown, not run.

use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine;

use super::is_cross_site;
use crate::contract::http::FormOrJson;
use crate::control_plane::admin_auth::AdminAuth;
use crate::control_plane::sessions::{cookie_value, Sessions, Valid, COOKIE, LIFETIME};
use crate::util::throttle::client_key;

const LOGIN: &str = include_str!("ui/login.html");
const APP: &str = include_str!("ui/app.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/app.css");

/// No inline script or style, nothing from elsewhere, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

#[derive(Clone)]
pub(super) struct Ui {
    pub auth: Arc<AdminAuth>,
    pub sessions: Arc<Sessions>,
}

pub(super) fn routes(ui: Ui) -> Router {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(page))
        .route("/ui/login", post(login))
        .route("/ui/logout", post(logout))
        .route(
            "/ui/app.js",
            get(|| async { asset(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/ui/app.css",
            get(|| async { asset(STYLE, "text/css; charset=utf-8") }),
        )
        .with_state(ui)
}

/// The headers every dashboard answer gets.
fn guarded(mut response: Response, secret: bool) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if secret {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

fn asset(text: &'static str, content_type: &'static str) -> Response {
    guarded(
        ([(header::CONTENT_TYPE, content_type)], text).into_response(),
        false,
    )
}

fn html(status: StatusCode, text: String) -> Response {
    guarded(
        (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            text,
        )
            .into_response(),
        true,
    )
}

/// The session of the request's cookie, if it is open, with its id.
pub(super) async fn session_of(
    sessions: &Sessions,
    headers: &HeaderMap,
) -> Option<(String, Valid)> {
    let cookies = headers.get(header::COOKIE)?.to_str().ok()?;
    let id = cookie_value(cookies, COOKIE)?;
    let valid = sessions.find(id).await?;
    Some((id.to_owned(), valid))
}

/// Whether the request carries the session's CSRF token.
pub(super) fn carries_token(valid: &Valid, headers: &HeaderMap) -> bool {
    let token = headers
        .get("x-csrf-token")
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    valid.token_matches(token)
}

async fn page(State(ui): State<Ui>, headers: HeaderMap) -> Response {
    match session_of(&ui.sessions, &headers).await {
        Some((_, valid)) => html(StatusCode::OK, APP.replace("{{csrf}}", &valid.csrf)),
        None => html(StatusCode::OK, LOGIN.replace("{{message}}", "")),
    }
}

async fn login(State(ui): State<Ui>, request: Request) -> Response {
    if is_cross_site(&request) {
        return html(
            StatusCode::FORBIDDEN,
            LOGIN.replace("{{message}}", "Cross-site sign-in is refused."),
        );
    }
    let client = request
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|info| client_key(info.0.ip()));
    let secure = request
        .extensions()
        .get::<axum::http::uri::Scheme>()
        .is_some_and(|scheme| *scheme == axum::http::uri::Scheme::HTTPS);
    if let Some(client) = client {
        if ui.auth.blocked_for(&client).is_some() {
            return html(
                StatusCode::TOO_MANY_REQUESTS,
                LOGIN.replace(
                    "{{message}}",
                    "Too many failed sign-ins from this address; try again later.",
                ),
            );
        }
    }
    let Ok(FormOrJson(fields)) = FormOrJson::from_request(request, &()).await else {
        return html(
            StatusCode::BAD_REQUEST,
            LOGIN.replace("{{message}}", "Give the admin id and secret."),
        );
    };
    let (id, secret) = (
        fields.get("id").unwrap_or_default(),
        fields.get("secret").unwrap_or_default(),
    );
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    );
    let granted = match ui.auth.check_async(Some(basic.as_bytes())).await {
        Ok(granted) => granted,
        // Busy checking others: not a wrong secret, and not counted as one.
        Err(_busy) => {
            return html(
                StatusCode::TOO_MANY_REQUESTS,
                LOGIN.replace(
                    "{{message}}",
                    "Too many sign-ins are being checked; try again shortly.",
                ),
            )
        }
    };
    if !granted {
        if let Some(client) = client {
            ui.auth.failed(client);
        }
        return html(
            StatusCode::UNAUTHORIZED,
            LOGIN.replace("{{message}}", "Wrong id or secret."),
        );
    }
    let (id, _csrf) = match ui.sessions.open().await {
        Ok(opened) => opened,
        Err(error) => {
            tracing::error!(%error, "a dashboard session could not be opened");
            return html(
                StatusCode::SERVICE_UNAVAILABLE,
                LOGIN.replace("{{message}}", "The session could not be opened; try again."),
            );
        }
    };
    let cookie = format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        LIFETIME.as_secs(),
        if secure { "; Secure" } else { "" }
    );
    let mut response = guarded(Redirect::to("/ui/").into_response(), true);
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

async fn logout(State(ui): State<Ui>, headers: HeaderMap) -> Response {
    let Some((id, valid)) = session_of(&ui.sessions, &headers).await else {
        return guarded(StatusCode::UNAUTHORIZED.into_response(), true);
    };
    if !carries_token(&valid, &headers) {
        return guarded(StatusCode::FORBIDDEN.into_response(), true);
    }
    ui.sessions.close(&id).await;
    let mut response = guarded(StatusCode::NO_CONTENT.into_response(), true);
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("herve_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    response
}

use axum::extract::FromRequest;
