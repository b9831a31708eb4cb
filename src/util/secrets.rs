//! Secrets kept as password hashes (bcrypt or argon2), and the keyed digests that let a
//! secret verified once be recognised again without paying the hash a second time.

use blake2::digest::{FixedOutput, KeyInit, Update};
use blake2::Blake2bMac512;

/// A keyed digest: what a verified secret is remembered as.
pub type Digest = [u8; 64];

/// A secret kept as a bcrypt or argon2 hash (PHC string for argon2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordHash {
    Bcrypt(String),
    Argon2(String),
}

/// Why a text is not a password hash Herve can check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    #[error("it is neither a bcrypt ($2b$…) nor an argon2 ($argon2id$…) hash")]
    NotAHash,
    #[error("it looks like a bcrypt hash but is not a valid one")]
    BadBcrypt,
    #[error("it looks like an argon2 hash but is not a valid one: {0}")]
    BadArgon2(String),
}

impl PasswordHash {
    /// Whether `text` starts like a hash (and so must parse as one).
    pub fn looks_like_one(text: &str) -> bool {
        is_bcrypt(text) || text.starts_with("$argon2")
    }

    /// Parses a hash now, so that a malformed one is refused where it is given rather
    /// than locking everyone out later.
    pub fn parse(text: &str) -> Result<PasswordHash, HashError> {
        if is_bcrypt(text) {
            bcrypt::verify("", text).map_err(|_| HashError::BadBcrypt)?;
            return Ok(PasswordHash::Bcrypt(text.to_owned()));
        }
        if !text.starts_with("$argon2") {
            return Err(HashError::NotAHash);
        }
        let bad = |error: argon2::password_hash::Error| HashError::BadArgon2(error.to_string());
        let parsed = argon2::PasswordHash::new(text).map_err(bad)?;
        argon2::Algorithm::try_from(parsed.algorithm).map_err(bad)?;
        argon2::Params::try_from(&parsed).map_err(bad)?;
        if parsed.salt.is_none() || parsed.hash.is_none() {
            return Err(HashError::BadArgon2("it has no salt or no hash".to_owned()));
        }
        Ok(PasswordHash::Argon2(text.to_owned()))
    }

    /// Whether `secret` is the one hashed. Slow by design (tens of milliseconds): run it
    /// on the hashing pool.
    pub fn verify(&self, secret: &[u8]) -> bool {
        match self {
            PasswordHash::Bcrypt(hash) => bcrypt::verify(secret, hash).unwrap_or(false),
            PasswordHash::Argon2(hash) => {
                use argon2::PasswordVerifier;
                argon2::PasswordHash::new(hash)
                    .map(|parsed| {
                        argon2::Argon2::default()
                            .verify_password(secret, &parsed)
                            .is_ok()
                    })
                    .unwrap_or(false)
            }
        }
    }
}

fn is_bcrypt(text: &str) -> bool {
    ["$2a$", "$2b$", "$2y$"].iter().any(|p| text.starts_with(p))
}

/// A random key for [`keyed_digest`]: per process, so digests mean nothing elsewhere.
pub fn digest_key() -> Result<[u8; 32], getrandom::Error> {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key)?;
    Ok(key)
}

/// BLAKE2b keyed with `key` over `parts`, each prefixed by its length (so that
/// `("ab", "c")` and `("a", "bc")` differ).
pub fn keyed_digest(key: &[u8; 32], parts: &[&[u8]]) -> Digest {
    let mut mac = <Blake2bMac512 as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("a 32-byte key fits BLAKE2b"));
    for part in parts {
        mac.update(&(part.len() as u64).to_le_bytes());
        mac.update(part);
    }
    mac.finalize_fixed().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_parse_and_verify() {
        let bcrypt = bcrypt::hash("hunter22", 4).expect("hash");
        let parsed = PasswordHash::parse(&bcrypt).expect("bcrypt");
        assert!(parsed.verify(b"hunter22"));
        assert!(!parsed.verify(b"hunter2"));
        assert_eq!(
            PasswordHash::parse("$2b$nonsense"),
            Err(HashError::BadBcrypt)
        );
        assert!(matches!(
            PasswordHash::parse("$argon2id$nonsense"),
            Err(HashError::BadArgon2(_))
        ));
        assert_eq!(PasswordHash::parse("hunter22"), Err(HashError::NotAHash));
        let key = [7u8; 32];
        assert_ne!(
            keyed_digest(&key, &[b"ab", b"c"]),
            keyed_digest(&key, &[b"a", b"bc"])
        );
    }
}
