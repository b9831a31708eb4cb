//! `auth`: user accounts for your apps: sign-up, login with bearer tokens, logout.
//!
//! Passwords are kept only as argon2id hashes; tokens are 256 random bits, given to the
//! client once and kept only as a hash, so neither a copy of the database nor
//! its backups let anyone log in. Hashing runs on Herve's hashing pool, and failed
//! logins are throttled per (client, username), with a slow-down per username.

mod db;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use base64::Engine;
use blake2::digest::{FixedOutput, Update};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::contract::http::{fields_from_body, media_type, ApiError, BodyError, Envelope};
use crate::contract::{
    Authenticator, FieldSpec, Fields, RunningService, ServiceContext, ServiceError, ServiceType,
};
use crate::util::hashing::{Busy, HashPool, Lane};
use crate::util::sqlite::DbError;
use crate::util::throttle::{client_key, Throttle};
use crate::util::unix_now;
use db::{AccountsDb, User};

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

/// The `auth` service type (the accounts of an app).
pub(crate) struct AuthType {
    db: AccountsDb,
    hashing: Arc<HashPool>,
}

impl AuthType {
    /// The type, its data in the shared database if there is one, else in the
    /// database file at `database`; its hashes on `hashing`.
    pub async fn open(
        database: &Path,
        shared: Option<&crate::util::postgres::SharedDb>,
        hashing: Arc<HashPool>,
    ) -> Result<Self, DbError> {
        Ok(AuthType {
            db: AccountsDb::open(database, shared).await?,
            hashing,
        })
    }
}

/// What an `auth` service keeps from its registration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct AuthConfig {
    /// How long a login token lasts, in seconds.
    pub token_ttl_s: u64,
}

#[async_trait]
impl ServiceType for AuthType {
    type Config = AuthConfig;

    fn name(&self) -> &str {
        "auth"
    }

    fn description(&self) -> &str {
        "A service keeping user accounts and bearer tokens"
    }

    fn fields(&self) -> Vec<FieldSpec> {
        vec![
            FieldSpec::optional("token_ttl_s", "How long a login token lasts, in seconds.")
                .or("86400"),
        ]
    }

    async fn register(
        &self,
        _ctx: &ServiceContext,
        fields: &Fields,
    ) -> Result<AuthConfig, ServiceError> {
        Ok(AuthConfig {
            token_ttl_s: fields.number("token_ttl_s", 86_400, 1..=31_536_000)?,
        })
    }

    async fn start(
        &self,
        ctx: &ServiceContext,
        config: &AuthConfig,
    ) -> Result<Box<dyn RunningService>, ServiceError> {
        let accounts = Arc::new(Accounts {
            service: ctx.uuid().to_string(),
            db: self.db.clone(),
            token_ttl: i64::try_from(config.token_ttl_s).unwrap_or(i64::MAX),
            per_client: Throttle::new(MAX_FAILURES, FAILURE_WINDOW, MAX_TRACKED),
            per_username: Throttle::new(SLOW_DOWN_AFTER, FAILURE_WINDOW, MAX_TRACKED),
            hashing: Arc::clone(&self.hashing),
        });
        let router = Router::new()
            .route("/signup", post(signup))
            .route("/login", post(login))
            .route("/me", get(me))
            .route("/logout", post(logout))
            .with_state(Arc::clone(&accounts));
        Ok(Box::new(AuthInstance { router, accounts }))
    }

    async fn unregister(
        &self,
        ctx: &ServiceContext,
        _config: &AuthConfig,
    ) -> Result<(), ServiceError> {
        self.db
            .forget(&ctx.uuid().to_string())
            .await
            .map_err(|error| {
                ServiceError::failed_because("The accounts could not be deleted", error)
            })
    }
}

/// A running `auth` service: its routes, and the tokens it issued for the services it
/// protects.
struct AuthInstance {
    router: Router,
    accounts: Arc<Accounts>,
}

#[async_trait]
impl RunningService for AuthInstance {
    fn routes(&self) -> Router {
        self.router.clone()
    }

    fn authenticator(&self) -> Option<Arc<dyn Authenticator>> {
        Some(Arc::clone(&self.accounts) as Arc<dyn Authenticator>)
    }
}

#[async_trait]
impl Authenticator for Accounts {
    async fn user_of_token(&self, token: &str) -> Result<Option<String>, ServiceError> {
        if token.is_empty() || token.len() > MAX_TOKEN {
            return Ok(None);
        }
        self.db
            .user_of_token(&self.service, &token_hash(token))
            .await
            .map(|user| user.map(|user| user.username))
            .map_err(|error| ServiceError::failed_because("The tokens could not be read", error))
    }
}

/// Longest bearer token looked up (issued ones are 43 characters).
const MAX_TOKEN: usize = 256;

struct Accounts {
    service: String,
    db: AccountsDb,
    token_ttl: i64,
    /// Recent failed logins per (client, username), in memory: a restart forgives them.
    per_client: Throttle<(IpAddr, String)>,
    /// Recent failed logins per username, from anywhere.
    per_username: Throttle<String>,
    hashing: Arc<HashPool>,
}

impl Accounts {
    /// Runs an argon2 computation on the hashing pool.
    async fn hash_work<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Busy> {
        self.hashing.run(Lane::Services, work).await
    }

    /// The user a bearer token belongs to (with the token's hash), if it is valid and
    /// not expired.
    async fn user_of(&self, headers: &HeaderMap) -> Result<Option<(String, User)>, ApiError> {
        let Some(token) = bearer(headers) else {
            return Ok(None);
        };
        let token_hash = token_hash(&token);
        let user = self
            .db
            .user_of_token(&self.service, &token_hash)
            .await
            .map_err(store_failed)?;
        Ok(user.map(|user| (token_hash, user)))
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
        .filter(|token| !token.is_empty() && token.len() <= MAX_TOKEN)
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
fn busy() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "Too many sign-ups and logins are being checked; try again shortly.",
    )
    .retry_after(Duration::from_secs(1))
}

fn store_failed(error: DbError) -> ApiError {
    super::data_failed("The accounts", error)
}

fn unauthorized(message: &'static str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, message)
        .with_header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
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
        invalid => ApiError::from(invalid),
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
    let hash = accounts
        .hash_work(move || {
            let mut salt = [0u8; 16];
            getrandom::fill(&mut salt).map_err(|e| e.to_string())?;
            let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
            Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map(|hash| hash.to_string())
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|_busy| busy())?
        .map_err(|why| ApiError::internal("The password could not be stored.", why))?;
    let now = unix_now();
    let added = accounts
        .db
        .add_user(&accounts.service, &username, hash, now)
        .await
        .map_err(store_failed)?;
    if !added {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "This username is already taken.",
        ));
    }
    Ok(Envelope::data(User {
        username,
        created_at: now,
    })
    .with_message("The account has been created.")
    .respond(StatusCode::CREATED))
}

async fn login(
    State(accounts): State<Arc<Accounts>>,
    ClientKey(client): ClientKey,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (username, password) = credentials(&headers, &body)?;
    if !valid_username(&username) {
        return Err(unauthorized("Invalid username or password."));
    }
    // Counted before the password is checked, so that parallel guesses count too. Per
    // client: a stranger's failures never lock the owner of the name out.
    let attempt = client.map(|client| (client, username.clone()));
    if let Some(attempt) = &attempt {
        if let Err(wait) = accounts.per_client.admit(attempt.clone()) {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many failed logins for this username from this address; try again later.",
            )
            .retry_after(wait));
        }
    }
    // A name many clients fail on is under attack: every login for it is slowed
    // down, but the right password still gets in.
    if accounts.per_username.recent_failures(&username) >= SLOW_DOWN_AFTER {
        tokio::time::sleep(SLOW_DOWN).await;
    }
    let stored = accounts
        .db
        .password_hash(&accounts.service, &username)
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
        return Err(busy());
    };
    if !verified {
        accounts.per_username.failed(username);
        return Err(unauthorized("Invalid username or password."));
    }
    if let Some(attempt) = &attempt {
        accounts.per_client.forgive(attempt);
    }

    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|error| ApiError::internal("No random bytes for a token.", error))?;
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let expires_at = unix_now().saturating_add(accounts.token_ttl);
    accounts
        .db
        .add_token(&accounts.service, &username, token_hash(&token), expires_at)
        .await
        .map_err(store_failed)?;
    let mut response = Envelope::data(json!({
        "token": token,
        "token_type": "Bearer",
        "expires_at": expires_at,
        "username": username,
    }))
    .respond(StatusCode::OK);
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
    match accounts.user_of(&headers).await? {
        Some((_, user)) => Ok(Envelope::data(user).respond(StatusCode::OK)),
        None => Err(unauthorized("A valid bearer token is required.")),
    }
}

async fn logout(
    State(accounts): State<Arc<Accounts>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Some((token_hash, _)) = accounts.user_of(&headers).await? else {
        return Err(unauthorized("A valid bearer token is required."));
    };
    accounts
        .db
        .remove_token(&token_hash)
        .await
        .map_err(store_failed)?;
    Ok(Envelope::message("You have been logged out.").respond(StatusCode::OK))
}
