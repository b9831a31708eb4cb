//! Dashboard sessions: after the admin signs in with the form, a random session id in
//! an `HttpOnly`, `SameSite=Strict` cookie stands for the credentials, and a CSRF token
//! bound to the session must come with every state-changing request (in the
//! `X-CSRF-Token` header, which another site cannot set).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use subtle::ConstantTimeEq;

use crate::util::lock;

/// The cookie that carries the session id.
pub(crate) const COOKIE: &str = "herve_session";
/// How long a session lasts from sign-in.
pub(crate) const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// The most sessions kept; past it the oldest is dropped.
const MAX_SESSIONS: usize = 1024;

struct Session {
    csrf: String,
    expires: Instant,
}

/// The signed-in dashboards.
#[derive(Default)]
pub(crate) struct Sessions {
    open: Mutex<HashMap<String, Session>>,
}

/// A session that was found valid.
pub(crate) struct Valid {
    pub csrf: String,
}

impl Sessions {
    /// A new session: its id and CSRF token.
    pub fn open(&self) -> Result<(String, String), getrandom::Error> {
        let (id, csrf) = (random_token()?, random_token()?);
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
            },
        );
        Ok((id, csrf))
    }

    /// The session of this id, if it is open.
    pub fn find(&self, id: &str) -> Option<Valid> {
        let open = lock(&self.open);
        let session = open.get(id)?;
        (session.expires > Instant::now()).then(|| Valid {
            csrf: session.csrf.clone(),
        })
    }

    pub fn close(&self, id: &str) {
        lock(&self.open).remove(id);
    }
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

    #[test]
    fn sessions_open_find_and_close() {
        let sessions = Sessions::default();
        let (id, csrf) = sessions.open().expect("random");
        let valid = sessions.find(&id).expect("open");
        assert!(valid.token_matches(csrf.as_bytes()));
        assert!(!valid.token_matches(b"guess"));
        assert!(sessions.find("other").is_none());
        sessions.close(&id);
        assert!(sessions.find(&id).is_none());
        assert_eq!(cookie_value("a=1; herve_session=xyz", COOKIE), Some("xyz"));
    }
}
