//! CSRF protection for forms: a random nonce in a `SameSite=Strict` cookie, and in the
//! form a token that is the nonce's keyed digest. Another site can make a browser send
//! the cookie, but can neither read it nor make the token that goes with it.

use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use base64::Engine;
use blake2::digest::{FixedOutput, KeyInit, Update};
use blake2::Blake2bMac512;
use subtle::ConstantTimeEq;

/// Makes and checks CSRF tokens; one per service, shared by its handlers.
#[derive(Clone)]
pub struct CsrfGuard {
    key: [u8; 32],
    cookie: &'static str,
}

impl std::fmt::Debug for CsrfGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CsrfGuard")
            .field("cookie", &self.cookie)
            .finish_non_exhaustive()
    }
}

impl CsrfGuard {
    /// A guard with a random key, whose nonce lives in the cookie named `cookie`.
    /// Tokens last as long as the process (a restart asks forms to be loaded again).
    pub fn new(cookie: &'static str) -> Result<Self, getrandom::Error> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key)?;
        Ok(CsrfGuard { key, cookie })
    }

    /// The token to put in a form (a hidden field, or a header for scripts), and the
    /// jar to answer with: it sets the nonce cookie (for every path) when the client
    /// had none.
    pub fn token(&self, jar: CookieJar) -> (CookieJar, String) {
        self.token_scoped(jar, "/")
    }

    /// As [`CsrfGuard::token`], with the nonce cookie sent back only under `path` (a
    /// service's [`MountPrefix`](crate::contract::MountPrefix), say), so that services
    /// of one Herve keep their nonces apart.
    pub fn token_scoped(&self, jar: CookieJar, path: &str) -> (CookieJar, String) {
        if let Some(nonce) = jar.get(self.cookie).map(|c| c.value().to_owned()) {
            if !nonce.is_empty() {
                let token = self.digest(&nonce);
                return (jar, token);
            }
        }
        let mut bytes = [0u8; 24];
        // Without randomness a nonce could be guessed; an empty one is never accepted.
        let nonce = match getrandom::fill(&mut bytes) {
            Ok(()) => base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes),
            Err(_) => String::new(),
        };
        let token = self.digest(&nonce);
        let path = if path.is_empty() { "/" } else { path };
        let cookie = Cookie::build((self.cookie, nonce))
            .http_only(true)
            .same_site(SameSite::Strict)
            .path(path.to_owned())
            .build();
        (jar.add(cookie), token)
    }

    /// Whether `presented` is the token of the client's nonce cookie.
    pub fn verify(&self, jar: &CookieJar, presented: Option<&str>) -> bool {
        let (Some(cookie), Some(presented)) = (jar.get(self.cookie), presented) else {
            return false;
        };
        if cookie.value().is_empty() {
            return false;
        }
        let expected = self.digest(cookie.value());
        bool::from(expected.as_bytes().ct_eq(presented.as_bytes()))
    }

    fn digest(&self, nonce: &str) -> String {
        let mut mac = <Blake2bMac512 as KeyInit>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("a 32-byte key fits BLAKE2b"));
        mac.update(nonce.as_bytes());
        let digest: [u8; 64] = mac.finalize_fixed().into();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..32])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_matches_its_own_cookie_only() {
        let guard = CsrfGuard::new("csrf").expect("random");
        let (jar, token) = guard.token(CookieJar::new());
        assert!(guard.verify(&jar, Some(&token)));
        assert!(!guard.verify(&jar, Some("forged")));
        assert!(!guard.verify(&jar, None));
        assert!(!guard.verify(&CookieJar::new(), Some(&token)));
        let (other, other_token) = guard.token(CookieJar::new());
        assert!(!guard.verify(&other, Some(&token)));
        assert!(guard.verify(&other, Some(&other_token)));
        // Asked again, the same client keeps its nonce and token.
        let (_, again) = guard.token(jar.clone());
        assert_eq!(again, token);
    }
}
