//! `auth`: user accounts for your apps: sign-up, login with bearer tokens, logout.
//!
//! Passwords are kept only as argon2id hashes; tokens are 256 random bits, given to the
//! client once and kept only as a hash, so neither a copy of the database nor
//! its backups let anyone log in.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine;
use blake2::digest::{FixedOutput, Update};
use rusqlite::{params, OptionalExtension};
use serde::Serialize;
use serde_json::{json, Value};

use super::field;
use crate::api::form::{fields_from_body, media_type, BodyError};
use crate::api::{json_ok, json_ok_with, ApiError};
use crate::contract::{Fields, RunningService, ServiceContext, ServiceError, ServiceType};
use crate::store::sqlite::{db, SqliteStore};
use crate::store::{unix_now, StoreError};
use crate::util::hashing::{Busy, HashPool, Lane};
use crate::util::throttle::{client_key, Throttle};

/// Shortest and longest password accepted.
const MIN_PASSWORD: usize = 8;
const MAX_PASSWORD: usize = 1024;
/// Failed logins for one username from one client within [`FAILURE_WINDOW`] before
/// that client is refused (429) for that username.
const MAX_FAILURES: usize = 5;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Failed logins for one username from anywhere within the window after which every
/// login for it is slowed down (not refused: its owner must still get in).
const SLOW_DOWN_AFTER: usize = 20;
/// How much a login of a username under attack is slowed down.
const SLOW_DOWN: Duration = Duration::from_secs(1);
/// (client, username) pairs and usernames whose recent failures are remembered at once.
const MAX_TRACKED: usize = 10_000;

/// The `auth` service type.
pub struct AuthType {
    database: SqliteStore,
    hashing: Arc<HashPool>,
}

impl AuthType {
    pub fn new(database: SqliteStore, hashing: Arc<HashPool>) -> Self {
        AuthType { database, hashing }
    }
}

#[async_trait]
impl ServiceType for AuthType {
    fn name(&self) -> &str {
        "auth"
    }

    fn description(&self) -> &str {
        "A service keeping user accounts and bearer tokens"
    }

    async fn register(
        &self,
        _ctx: &ServiceContext,
        fields: &Fields,
    ) -> Result<Value, ServiceError> {
        let ttl = field::number(fields, "token_ttl_s", 86_400, 1..=31_536_000)?;
        Ok(json!({ "token_ttl_s": ttl }))
    }

    async fn start(
        &self,
        ctx: &ServiceContext,
        config: &Value,
    ) -> Result<Box<dyn RunningService>, ServiceError> {
        let ttl = config["token_ttl_s"]
            .as_u64()
            .ok_or_else(|| ServiceError::failed("The stored configuration has no token_ttl_s."))?;
        let accounts = Arc::new(Accounts {
            service: ctx.uuid().to_string(),
            database: self.database.clone(),
            token_ttl: i64::try_from(ttl).unwrap_or(i64::MAX),
            per_client: Throttle::new(MAX_FAILURES, FAILURE_WINDOW, MAX_TRACKED),
            per_username: Throttle::new(SLOW_DOWN_AFTER, FAILURE_WINDOW, MAX_TRACKED),
            hashing: Arc::clone(&self.hashing),
        });
        let router = Router::new()
            .route("/signup", post(signup))
            .route("/login", post(login))
            .route("/me", get(me))
            .route("/logout", post(logout))
            .with_state(accounts);
        Ok(Box::new(router))
    }

    async fn unregister(&self, ctx: &ServiceContext, _config: &Value) -> Result<(), ServiceError> {
        self.database
            .delete_service_rows(&["auth_tokens", "auth_users"], ctx.uuid().to_string())
            .await
            .map_err(|e| ServiceError::failed(e.to_string()))
    }
}

struct Accounts {
    service: String,
    database: SqliteStore,
    token_ttl: i64,
    /// Recent failed logins per (client, username), in memory: a restart forgives them.
    per_client: Throttle<(IpAddr, String)>,
    /// Recent failed logins per username, from anywhere.
    per_username: Throttle<String>,
    hashing: Arc<HashPool>,
}

#[derive(Serialize)]
struct User {
    username: String,
    created_at: i64,
}

impl Accounts {
    /// Runs an argon2 computation on the hashing pool.
    async fn hash_work<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Busy> {
        self.hashing.run(Lane::Services, work).await
    }

    /// The user a bearer token belongs to, if it is valid and not expired.
    async fn user_of(&self, headers: &HeaderMap) -> Result<Option<(String, User)>, ApiError> {
        let Some(token) = bearer(headers) else {
            return Ok(None);
        };
        let token_hash = token_hash(&token);
        let (service, wanted) = (self.service.clone(), token_hash.clone());
        let found = self
            .database
            .with_conn(move |conn| {
                conn.query_row(
                    "SELECT u.username, u.created_at FROM auth_tokens t
                     JOIN auth_users u ON u.service = t.service AND u.username = t.username
                     WHERE t.token_hash = ?1 AND t.service = ?2 AND t.expires_at > ?3",
                    params![wanted, service, unix_now()],
                    |row| {
                        Ok(User {
                            username: row.get(0)?,
                            created_at: row.get(1)?,
                        })
                    },
                )
                .optional()
                .map_err(db)
            })
            .await
            .map_err(store_failed)?;
        Ok(found.map(|user| (token_hash, user)))
    }
}

fn valid_username(username: &str) -> bool {
    !username.is_empty()
        && username.len() <= 64
        && username
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'))
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
        .filter(|token| !token.is_empty() && token.len() <= 256)
}

/// Tokens have 256 random bits: a fast hash is enough to keep them unusable at rest.
fn token_hash(token: &str) -> String {
    let mut hasher = blake2::Blake2b512::default();
    hasher.update(b"herve-auth-token:");
    hasher.update(token.as_bytes());
    let digest: [u8; 64] = hasher.finalize_fixed().into();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The hashing pool's queue is full: come back in a moment.
fn busy() -> Response {
    with_retry_after(
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Too many sign-ups and logins are being checked; try again shortly.",
        ),
        Duration::from_secs(1),
    )
}

fn with_retry_after(error: ApiError, wait: Duration) -> Response {
    let mut response = error.into_response();
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(wait.as_secs().max(1)),
    );
    response
}

/// The client's address as the throttles count it, when the data plane gave it.
struct ClientKey(Option<IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientKey {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientKey(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<SocketAddr>>()
                .map(|info| client_key(info.0.ip())),
        ))
    }
}

fn store_failed(error: StoreError) -> ApiError {
    tracing::error!(%error, "auth store failed");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "The accounts could not be read or saved.",
    )
}

fn unauthorized(message: &'static str) -> Response {
    let mut response = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// The username and password of a sign-up or login body.
fn credentials(headers: &HeaderMap, body: &[u8]) -> Result<(String, String), ApiError> {
    let fields = fields_from_body(
        media_type(headers.get(header::CONTENT_TYPE)).as_deref(),
        body,
    )
    .map_err(|error| match error {
        BodyError::UnsupportedType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Send a form (application/x-www-form-urlencoded) or a JSON object.",
        ),
        BodyError::Invalid(why) => ApiError::new(StatusCode::BAD_REQUEST, why),
    })?;
    let missing = |name: &str| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("The field '{name}' is required."),
        )
    };
    let username = fields
        .get("username")
        .filter(|u| !u.is_empty())
        .ok_or_else(|| missing("username"))?;
    let password = fields
        .get("password")
        .filter(|p| !p.is_empty())
        .ok_or_else(|| missing("password"))?;
    Ok((username.to_owned(), password.to_owned()))
}

async fn signup(
    State(accounts): State<Arc<Accounts>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (username, password) = credentials(&headers, &body)?;
    if !valid_username(&username) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "The field 'username' must be 1 to 64 letters, digits, '.', '_', '-' or '@'.",
        ));
    }
    let length = password.chars().count();
    if !(MIN_PASSWORD..=MAX_PASSWORD).contains(&length) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("The field 'password' must be {MIN_PASSWORD} to {MAX_PASSWORD} characters."),
        ));
    }
    let hashed = accounts
        .hash_work(move || {
            let mut salt = [0u8; 16];
            getrandom::fill(&mut salt).map_err(|e| e.to_string())?;
            let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
            Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map(|hash| hash.to_string())
                .map_err(|e| e.to_string())
        })
        .await;
    let Ok(hashed) = hashed else {
        return Ok(busy());
    };
    let hash = hashed.map_err(|why| {
        tracing::error!(%why, "password hashing failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The password could not be stored.",
        )
    })?;
    let service = accounts.service.clone();
    let now = unix_now();
    let user = username.clone();
    let inserted = accounts
        .database
        .with_conn(move |conn| {
            conn.execute(
                "INSERT INTO auth_users (service, username, password_hash, created_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (service, username) DO NOTHING",
                params![service, user, hash, now],
            )
            .map_err(db)
        })
        .await
        .map_err(store_failed)?;
    if inserted == 0 {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "This username is already taken.",
        ));
    }
    Ok(json_ok(
        StatusCode::CREATED,
        Some("The account has been created."),
        Some(User {
            username,
            created_at: now,
        }),
    ))
}

async fn login(
    State(accounts): State<Arc<Accounts>>,
    ClientKey(client): ClientKey,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (username, password) = credentials(&headers, &body)?;
    if !valid_username(&username) {
        return Ok(unauthorized("Invalid username or password."));
    }
    // Counted before the password is checked, so that parallel guesses count too. Per
    // client: a stranger's failures never lock the owner of the name out.
    let attempt = client.map(|client| (client, username.clone()));
    if let Some(attempt) = &attempt {
        if let Err(wait) = accounts.per_client.admit(attempt.clone()) {
            return Ok(with_retry_after(
                ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "Too many failed logins for this username from this address; try again later.",
                ),
                wait,
            ));
        }
    }
    // A name many clients fail on is under attack: every login for it is slowed
    // down, but the right password still gets in.
    if accounts.per_username.recent_failures(&username) >= SLOW_DOWN_AFTER {
        tokio::time::sleep(SLOW_DOWN).await;
    }
    let service = accounts.service.clone();
    let user = username.clone();
    let stored: Option<String> = accounts
        .database
        .with_conn(move |conn| {
            conn.query_row(
                "SELECT password_hash FROM auth_users WHERE service = ?1 AND username = ?2",
                params![service, user],
                |row| row.get(0),
            )
            .optional()
            .map_err(db)
        })
        .await
        .map_err(store_failed)?;
    let verified = accounts
        .hash_work(move || match stored {
            Some(hash) => PasswordHash::new(&hash)
                .map(|parsed| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &parsed)
                        .is_ok()
                })
                .unwrap_or(false),
            None => {
                // Same work for an unknown user: timing does not tell who exists.
                let salt = SaltString::encode_b64(b"herve-no-such-user").ok();
                if let Some(salt) = salt {
                    let _ = Argon2::default().hash_password(password.as_bytes(), &salt);
                }
                false
            }
        })
        .await;
    let Ok(verified) = verified else {
        if let Some(attempt) = &attempt {
            // Not checked at all: not a failure.
            accounts.per_client.forgive(attempt);
        }
        return Ok(busy());
    };
    if !verified {
        accounts.per_username.failed(username);
        return Ok(unauthorized("Invalid username or password."));
    }
    if let Some(attempt) = &attempt {
        accounts.per_client.forgive(attempt);
    }

    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "No random bytes for a token.",
        )
    })?;
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let expires_at = unix_now().saturating_add(accounts.token_ttl);
    let (service, user, hash) = (
        accounts.service.clone(),
        username.clone(),
        token_hash(&token),
    );
    accounts
        .database
        .in_transaction(move |tx| {
            // Expired tokens of this service go while we are here.
            tx.execute(
                "DELETE FROM auth_tokens WHERE service = ?1 AND expires_at <= ?2",
                params![service, unix_now()],
            )
            .map_err(db)?;
            tx.execute(
                "INSERT INTO auth_tokens (token_hash, service, username, expires_at) VALUES (?1, ?2, ?3, ?4)",
                params![hash, service, user, expires_at],
            )
            .map_err(db)?;
            Ok(())
        })
        .await
        .map_err(store_failed)?;
    let mut response = json_ok(
        StatusCode::OK,
        None,
        Some(
            json!({ "token": token, "token_type": "Bearer", "expires_at": expires_at, "username": username }),
        ),
    );
    // A credential: no cache may keep it.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

async fn me(
    State(accounts): State<Arc<Accounts>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    Ok(match accounts.user_of(&headers).await? {
        Some((_, user)) => json_ok(StatusCode::OK, None, Some(user)),
        None => unauthorized("A valid bearer token is required."),
    })
}

async fn logout(
    State(accounts): State<Arc<Accounts>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Some((token_hash, _)) = accounts.user_of(&headers).await? else {
        return Ok(unauthorized("A valid bearer token is required."));
    };
    accounts
        .database
        .with_conn(move |conn| {
            conn.execute(
                "DELETE FROM auth_tokens WHERE token_hash = ?1",
                params![token_hash],
            )
            .map_err(db)
        })
        .await
        .map_err(store_failed)?;
    Ok(json_ok_with::<()>(
        StatusCode::OK,
        Some("You have been logged out.".to_owned()),
        None,
    ))
}
