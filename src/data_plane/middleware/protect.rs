//! `protect`: a service only answers clients an `auth` service of this Herve knows
//! (`auth:<name or uuid>`, by bearer token), or clients with Basic credentials among
//! `basic_users` (kept as bcrypt or argon2 hashes). The protected service learns who
//! asks from `X-Herve-User`.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::FieldError;
use crate::contract::http::{basic_credentials, plain};
use crate::contract::{Authenticator, Fields};
use crate::util::hashing::{HashPool, Lane};
use crate::util::lock;
use crate::util::secrets::{self, Digest, PasswordHash};
use crate::util::throttle::{client_key, Throttle};

/// The header that tells a protected service who asks.
pub(crate) const USER_HEADER: &str = "x-herve-user";

/// How long an authenticator's answer about a token is reused: a revoked token is
/// refused everywhere within this.
pub(crate) const TOKEN_CACHE_TTL: Duration = Duration::from_millis(500);
const CACHE_SHARDS: usize = 16;
const CACHE_PER_SHARD: usize = 1024;
/// Bad credentials from one client within a minute before it is refused for a while
/// (without a lookup or a hash).
const MAX_FAILURES: usize = 20;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
const MAX_TRACKED: usize = 10_000;
/// Most users `basic_users` may list.
const MAX_BASIC_USERS: usize = 100;
/// Longest bearer token looked up.
const MAX_TOKEN: usize = 256;

/// How a service is protected, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ProtectSpec {
    /// By the `auth` service with this name or uuid.
    Auth(String),
    /// By Basic credentials: user names and their hashes.
    Basic(Vec<(String, PasswordHash)>),
}

impl ProtectSpec {
    /// Reads `protect` and `basic_users`.
    pub fn read(fields: &Fields) -> Result<Option<ProtectSpec>, FieldError> {
        let users: Vec<&str> = fields
            .get_all("basic_users")
            .flat_map(str::lines)
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .collect();
        let protect = fields.optional("protect").unwrap_or("none");
        if protect != "basic" && !users.is_empty() {
            return Err(FieldError::new(
                "basic_users",
                "The field 'basic_users' is only used with protect=basic.",
            ));
        }
        if protect == "none" {
            return Ok(None);
        }
        if protect == "basic" {
            return read_basic_users(&users).map(|users| Some(ProtectSpec::Basic(users)));
        }
        let Some(reference) = protect.strip_prefix("auth:").map(str::trim) else {
            return Err(FieldError::new(
                "protect",
                format!(
                    "The field 'protect' must be 'auth:<name or uuid of an auth service>', \
                     'basic' or 'none'; '{protect}' is not."
                ),
            ));
        };
        let reference = match Uuid::try_parse(reference) {
            Ok(uuid) => uuid.to_string(),
            Err(_) if !reference.is_empty() => reference.to_owned(),
            Err(_) => {
                return Err(FieldError::new(
                    "protect",
                    "The field 'protect' names no auth service after 'auth:'.",
                ))
            }
        };
        Ok(Some(ProtectSpec::Auth(reference)))
    }
}

fn read_basic_users(lines: &[&str]) -> Result<Vec<(String, PasswordHash)>, FieldError> {
    let invalid = |message: String| FieldError::new("basic_users", message);
    if lines.is_empty() {
        return Err(invalid(
            "protect=basic needs 'basic_users': one 'user:hash' a line (make a hash with \
             `herve hash-secret`)."
                .to_owned(),
        ));
    }
    if lines.len() > MAX_BASIC_USERS {
        return Err(invalid(format!(
            "The field 'basic_users' may list at most {MAX_BASIC_USERS} users."
        )));
    }
    let mut users: Vec<(String, PasswordHash)> = Vec::new();
    for line in lines {
        let Some((user, hash)) = line.split_once(':') else {
            return Err(invalid(
                "Each entry of 'basic_users' is 'user:hash'.".to_owned(),
            ));
        };
        let valid_user = !user.is_empty()
            && user.len() <= 64
            && user
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'));
        if !valid_user {
            return Err(invalid(format!(
                "'{user}' in 'basic_users' is not a user name (1 to 64 letters, digits, '.', \
                 '_', '-' or '@')."
            )));
        }
        let hash = PasswordHash::parse(hash.trim()).map_err(|why| {
            invalid(format!(
                "The secret of '{user}' in 'basic_users' must be a bcrypt or argon2 hash \
                 (make one with `herve hash-secret`): {why}."
            ))
        })?;
        if users.iter().any(|(known, _)| known == user) {
            return Err(invalid(format!(
                "'{user}' is listed twice in 'basic_users'."
            )));
        }
        users.push((user.to_owned(), hash));
    }
    Ok(users)
}

/// Why a request does not get through.
pub(crate) type Refusal = Response<Body>;

/// A protection in force.
pub(crate) struct Guard {
    kind: Kind,
    /// Bad credentials per client.
    failures: Throttle<IpAddr>,
}

enum Kind {
    Bearer {
        reference: String,
        cache: TokenCache,
    },
    Basic {
        users: HashMap<String, BasicUser>,
        /// Checked when the user is unknown, so that timing does not tell who exists.
        decoy: PasswordHash,
        key: [u8; 32],
        hashing: Arc<HashPool>,
        challenge: HeaderValue,
    },
}

struct BasicUser {
    name: HeaderValue,
    hash: PasswordHash,
    /// Digest of the last secret its hash verified: the same credentials again are
    /// compared, not hashed.
    verified: ArcSwapOption<Digest>,
}

impl Guard {
    /// The guard `spec` asks for, for the service `service` (the Basic realm).
    pub fn new(spec: &ProtectSpec, service: &str, hashing: &Arc<HashPool>) -> Guard {
        let kind = match spec {
            ProtectSpec::Auth(reference) => Kind::Bearer {
                reference: reference.clone(),
                cache: TokenCache::new(),
            },
            ProtectSpec::Basic(users) => {
                let challenge =
                    HeaderValue::from_str(&format!("Basic realm=\"{service}\", charset=\"UTF-8\""))
                        .unwrap_or_else(|_| HeaderValue::from_static("Basic realm=\"herve\""));
                Kind::Basic {
                    decoy: users
                        .first()
                        .map(|(_, hash)| hash.clone())
                        .unwrap_or(PasswordHash::Bcrypt(String::new())),
                    users: users
                        .iter()
                        .filter_map(|(user, hash)| {
                            Some((
                                user.clone(),
                                BasicUser {
                                    name: HeaderValue::from_str(user).ok()?,
                                    hash: hash.clone(),
                                    verified: ArcSwapOption::empty(),
                                },
                            ))
                        })
                        .collect(),
                    // Without randomness every digest would still be keyed per guard;
                    // a fixed key only makes them comparable across processes.
                    key: secrets::digest_key().unwrap_or([0x5a; 32]),
                    hashing: Arc::clone(hashing),
                    challenge,
                }
            }
        };
        Guard {
            kind,
            failures: Throttle::new(MAX_FAILURES, FAILURE_WINDOW, MAX_TRACKED),
        }
    }

    /// The `auth` service this guard asks, if it asks one.
    pub fn authority(&self) -> Option<&str> {
        match &self.kind {
            Kind::Bearer { reference, .. } => Some(reference),
            Kind::Basic { .. } => None,
        }
    }

    /// The user a request's credentials name, or the answer that refuses it.
    /// `authenticator` finds what the `auth` service offers now (if it runs).
    pub async fn check(
        &self,
        authenticator: impl FnOnce() -> Option<Arc<dyn Authenticator>>,
        client: IpAddr,
        headers: &HeaderMap,
    ) -> Result<HeaderValue, Refusal> {
        let client = client_key(client);
        // The throttle guards the costly work (a lookup, a hash), not the answers
        // already known: a client behind the address of an attacker who keeps failing
        // still gets in with credentials that passed before.
        let admit = || self.failures.blocked_for(&client).map_or(Ok(()), Err);
        // The user, and the Basic challenge to refuse with (else the Bearer one).
        let (user, basic) = match &self.kind {
            Kind::Bearer { cache, .. } => {
                let Some(token) = bearer_token(headers) else {
                    return Err(bearer_challenge("A bearer token is required.\n"));
                };
                let user = match cache.get(token) {
                    Some(user) => user,
                    None => {
                        admit().map_err(too_many_failures)?;
                        let user = ask(authenticator(), token).await?;
                        cache.put(token, user.clone());
                        user
                    }
                };
                (user, None)
            }
            Kind::Basic {
                users,
                decoy,
                key,
                hashing,
                challenge,
            } => {
                let credentials = headers
                    .get(header::AUTHORIZATION)
                    .and_then(|value| basic_credentials(value.as_bytes()));
                let Some((user, secret)) = credentials else {
                    return Err(basic_challenge(challenge));
                };
                let known = std::str::from_utf8(&user)
                    .ok()
                    .and_then(|user| users.get(user));
                let presented = secrets::keyed_digest(key, &[&user, &secret]);
                let user = match known {
                    Some(known) if known.remembers(&presented) => Some(known.name.clone()),
                    _ => {
                        admit().map_err(too_many_failures)?;
                        let hash = known.map_or_else(|| decoy.clone(), |known| known.hash.clone());
                        let verified = hashing
                            .run(Lane::Services, move || hash.verify(&secret))
                            .await
                            .map_err(|_busy| busy())?;
                        known.filter(|_| verified).map(|known| {
                            known.verified.store(Some(Arc::new(presented)));
                            known.name.clone()
                        })
                    }
                };
                (user, Some(challenge))
            }
        };
        user.ok_or_else(|| {
            self.failures.failed(client);
            match basic {
                Some(challenge) => basic_challenge(challenge),
                None => bearer_challenge("The bearer token is invalid or expired.\n"),
            }
        })
    }
}

impl BasicUser {
    /// Whether `presented` is the digest of the secret its hash verified last.
    fn remembers(&self, presented: &Digest) -> bool {
        self.verified
            .load()
            .as_deref()
            .is_some_and(|digest| bool::from(digest.ct_eq(presented)))
    }
}

/// Asks the `auth` service who `token` is.
async fn ask(
    authenticator: Option<Arc<dyn Authenticator>>,
    token: &str,
) -> Result<Option<HeaderValue>, Refusal> {
    let Some(authenticator) = authenticator else {
        return Err(plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "The auth service that protects this service is not running.\n",
        ));
    };
    match authenticator.user_of_token(token).await {
        Ok(user) => Ok(user.and_then(|user| HeaderValue::from_str(&user).ok())),
        Err(error) => {
            tracing::error!(%error, "an auth service could not check a token");
            Err(plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "The token could not be checked; try again shortly.\n",
            ))
        }
    }
}

fn busy() -> Refusal {
    let mut busy = plain(
        StatusCode::SERVICE_UNAVAILABLE,
        "Too many credentials are being checked; try again shortly.\n",
    );
    busy.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    busy
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && token.len() <= MAX_TOKEN)
        .then_some(token)
}

fn bearer_challenge(message: &'static str) -> Refusal {
    let mut response = plain(StatusCode::UNAUTHORIZED, message);
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

fn basic_challenge(challenge: &HeaderValue) -> Refusal {
    let mut response = plain(
        StatusCode::UNAUTHORIZED,
        "Valid credentials are required.\n",
    );
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, challenge.clone());
    response
}

fn too_many_failures(wait: Duration) -> Refusal {
    let mut response = plain(
        StatusCode::TOO_MANY_REQUESTS,
        "Too many bad credentials from this address; try again later.\n",
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, wait.as_secs().max(1).into());
    response
}

/// What an authenticator said about tokens lately: a user, or `None` for a token it
/// refused. Bounded; entries older than [`TOKEN_CACHE_TTL`] are never used.
struct TokenCache {
    shards: Box<[Mutex<CacheShard>]>,
    hasher: RandomState,
}

type CacheShard = HashMap<Box<str>, Cached>;

struct Cached {
    user: Option<HeaderValue>,
    at: Instant,
}

impl TokenCache {
    fn new() -> TokenCache {
        TokenCache {
            shards: (0..CACHE_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, token: &str) -> &Mutex<CacheShard> {
        &self.shards[(self.hasher.hash_one(token) as usize) % CACHE_SHARDS]
    }

    fn get(&self, token: &str) -> Option<Option<HeaderValue>> {
        let shard = lock(self.shard(token));
        let cached = shard.get(token)?;
        (cached.at.elapsed() < TOKEN_CACHE_TTL).then(|| cached.user.clone())
    }

    fn put(&self, token: &str, user: Option<HeaderValue>) {
        let mut shard = lock(self.shard(token));
        if shard.len() >= CACHE_PER_SHARD {
            shard.retain(|_, cached| cached.at.elapsed() < TOKEN_CACHE_TTL);
            if shard.len() >= CACHE_PER_SHARD {
                shard.clear();
            }
        }
        shard.insert(
            token.into(),
            Cached {
                user,
                at: Instant::now(),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protect_fields_are_checked() {
        let read = |pairs: &[(&str, &str)]| ProtectSpec::read(&Fields::from_pairs(pairs.to_vec()));
        assert_eq!(read(&[]), Ok(None));
        assert_eq!(
            read(&[("protect", "auth:accounts")]),
            Ok(Some(ProtectSpec::Auth("accounts".to_owned())))
        );
        let hash = bcrypt::hash("pw", 4).expect("hash");
        let basic = read(&[
            ("protect", "basic"),
            ("basic_users", &format!("ann:{hash}")),
        ]);
        assert!(matches!(basic, Ok(Some(ProtectSpec::Basic(users))) if users.len() == 1));
        for (pairs, field) in [
            (vec![("protect", "auth:")], "protect"),
            (vec![("protect", "token")], "protect"),
            (vec![("protect", "basic")], "basic_users"),
            (
                vec![("protect", "basic"), ("basic_users", "ann:secret")],
                "basic_users",
            ),
            (vec![("basic_users", "ann:$2b$04$x")], "basic_users"),
        ] {
            assert_eq!(
                read(&pairs).err().map(|e| e.field),
                Some(field),
                "{pairs:?}"
            );
        }
    }
}
