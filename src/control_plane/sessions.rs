//! Dashboard sessions: after the admin signs in with the form, a random session id in
//! an `HttpOnly`, `SameSite=Strict` cookie stands for the credentials, and a CSRF token
//! bound to the session must come with every state-changing request (in the
//! `X-CSRF-Token` header, which another site cannot set).
//!
//! Several nodes share their sessions through the shared store (by the id's digest, never
//! the id), so that a dashboard behind a load balancer stays signed in whichever node
//! answers; each node keeps what it read for [`RECHECK`], and keeps it while the
//! database is away.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use blake2::Digest;
use subtle::ConstantTimeEq;

use super::store::{Store, StoreError};
use crate::util::{lock, unix_now};

/// The cookie that carries the session id.
pub(crate) const COOKIE: &str = "herve_session";
/// How long a session lasts from sign-in.
pub(crate) const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// The most sessions kept; past it the oldest is dropped.
const MAX_SESSIONS: usize = 1024;
/// How long a node trusts a shared session it read before reading it again (a sign-out
/// through another node counts from then on).
const RECHECK: Duration = Duration::from_secs(5);

struct Session {
    csrf: String,
    expires: Instant,
    /// When it was last read from the shared store (or opened here).
    checked: Instant,
}

/// The signed-in dashboards.
#[derive(Default)]
pub(crate) struct Sessions {
    open: Mutex<HashMap<String, Session>>,
    /// The store other nodes share, in a cluster.
    shared: Option<Arc<dyn Store>>,
}

/// A session that was found valid.
pub(crate) struct Valid {
    pub csrf: String,
}

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    #[error("no randomness for a session id: {0}")]
    Random(#[from] getrandom::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Sessions {
    /// Sessions shared with the other nodes of `store` when it is shared.
    pub fn new(store: &Arc<dyn Store>) -> Sessions {
        Sessions {
            open: Mutex::default(),
            shared: store.is_shared().then(|| Arc::clone(store)),
        }
    }

    /// A new session: its id and CSRF token.
    pub async fn open(&self) -> Result<(String, String), OpenError> {
        let (id, csrf) = (random_token()?, random_token()?);
        if let Some(store) = &self.shared {
            let expires_at = unix_now() + i64::try_from(LIFETIME.as_secs()).unwrap_or(i64::MAX);
            store.put_session(&digest(&id), &csrf, expires_at).await?;
        }
        let now = Instant::now();
        let mut open = lock(&self.open);
        open.retain(|_, session| session.expires > now);
        if open.len() >= MAX_SESSIONS {
            if let Some(oldest) = open
                .iter()
                .min_by_key(|(_, session)| session.expires)
                .map(|(id, _)| id.clone())
            {
                open.remove(&oldest);
            }
        }
        open.insert(
            id.clone(),
            Session {
                csrf: csrf.clone(),
                expires: now + LIFETIME,
                checked: now,
            },
        );
        Ok((id, csrf))
    }

    /// The session of this id, if it is open (here, or on another node of the cluster).
    pub async fn find(&self, id: &str) -> Option<Valid> {
        let now = Instant::now();
        let known = {
            let open = lock(&self.open);
            open.get(id)
                .filter(|session| session.expires > now)
                .map(|session| (session.csrf.clone(), session.checked))
        };
        let Some(store) = &self.shared else {
            return known.map(|(csrf, _)| Valid { csrf });
        };
        if let Some((csrf, checked)) = &known {
            if now.duration_since(*checked) < RECHECK {
                return Some(Valid { csrf: csrf.clone() });
            }
        }
        match store.session(&digest(id)).await {
            Ok(Some((csrf, expires_at))) if expires_at > unix_now() => {
                let left = u64::try_from(expires_at - unix_now()).unwrap_or(0);
                lock(&self.open).insert(
                    id.to_owned(),
                    Session {
                        csrf: csrf.clone(),
                        expires: now + Duration::from_secs(left),
                        checked: now,
                    },
                );
                Some(Valid { csrf })
            }
            Ok(_) => {
                // Signed out (or expired) through another node.
                lock(&self.open).remove(id);
                None
            }
            // The database is away: what this node knew stands.
            Err(_) => known.map(|(csrf, _)| Valid { csrf }),
        }
    }

    pub async fn close(&self, id: &str) {
        lock(&self.open).remove(id);
        if let Some(store) = &self.shared {
            if let Err(error) = store.remove_session(&digest(id)).await {
                tracing::warn!(%error, "a signed-out session stays open on the other nodes until it expires");
            }
        }
    }
}

/// What the shared store keeps of a session id: its digest, hex.
fn digest(id: &str) -> String {
    blake2::Blake2b512::digest(id.as_bytes())
        .iter()
        .take(32)
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

impl Valid {
    /// Whether `token` is this session's CSRF token (in constant time).
    pub fn token_matches(&self, token: &[u8]) -> bool {
        self.csrf.as_bytes().ct_eq(token).into()
    }
}

/// The value of cookie `name` in a `Cookie` header.
pub(crate) fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        (key == name).then_some(value)
    })
}

fn random_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sessions_open_find_and_close() {
        let sessions = Sessions::default();
        let (id, csrf) = sessions.open().await.expect("random");
        let valid = sessions.find(&id).await.expect("open");
        assert!(valid.token_matches(csrf.as_bytes()));
        assert!(!valid.token_matches(b"guess"));
        assert!(sessions.find("other").await.is_none());
        sessions.close(&id).await;
        assert!(sessions.find(&id).await.is_none());
        assert_eq!(cookie_value("a=1; herve_session=xyz", COOKIE), Some("xyz"));
    }
}
